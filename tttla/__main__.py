from tttla.cli import main

raise SystemExit(main())
