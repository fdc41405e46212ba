from selfilter.cli import main

raise SystemExit(main())
