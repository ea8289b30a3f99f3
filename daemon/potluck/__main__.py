from potluck.cli import main

raise SystemExit(main())
