"""`python -m paystream` is the `paystream` command."""

from paystream.cli import main

if __name__ == "__main__":
    main()
