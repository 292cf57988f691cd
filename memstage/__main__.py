from memstage.cli import main

raise SystemExit(main())
