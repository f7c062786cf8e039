from supervisor.runtime.daemon import main

raise SystemExit(main())
