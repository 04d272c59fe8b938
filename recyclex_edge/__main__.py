from recyclex_edge.cli import main

raise SystemExit(main())
