"""``python -m rpc_parallel worker <name> child-of <pid>@<host>``: a worker process;
``python -m rpc_parallel fork-server child-of <pid>@<host>``: a fork server's template."""

import sys

if len(sys.argv) > 1 and sys.argv[1] == "worker":
    from ._worker_main import main

    main()
elif len(sys.argv) > 1 and sys.argv[1] == "fork-server":
    from ._worker_main import main, preload, rehearse
    from .launch._fork_template import serve

    serve(preload, lambda: main(forked=True), rehearse)
else:
    sys.stderr.write(
        "usage: python -m rpc_parallel worker NAME child-of PID@HOST\n"
        "(started by rpc_parallel itself; the configuration arrives on stdin)\n"
    )
    sys.exit(2)
