try:
    from tracer.entry import main
except KeyboardInterrupt:  # Ctrl-C before even the entry point had loaded
    raise SystemExit(130) from None

main()
