"""``python -m dataloupe`` (also what ``torchrun -m dataloupe`` runs)."""

from dataloupe.cli import main

if __name__ == "__main__":
    main()
