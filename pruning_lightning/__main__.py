"""`python -m pruning_lightning` is the same CLI as the `pruning-lightning` command."""

from pruning_lightning.cli import main

if __name__ == "__main__":
    main()
