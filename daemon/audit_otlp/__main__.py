from audit_otlp.cli import main

raise SystemExit(main())
