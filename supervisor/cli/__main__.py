from supervisor.cli.supctl import main

raise SystemExit(main())
