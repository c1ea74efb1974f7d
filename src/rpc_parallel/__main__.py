"""``python -m rpc_parallel worker <name> child-of <pid>@<host>``: a worker process."""

import sys

if len(sys.argv) > 1 and sys.argv[1] == "worker":
    from ._worker_main import main

    main()
else:
    sys.stderr.write(
        "usage: python -m rpc_parallel worker NAME child-of PID@HOST\n"
        "(started by rpc_parallel itself; the configuration arrives on stdin)\n"
    )
    sys.exit(2)
