"""`python -m pipeline --input LIBRARY --output OUT [Beam flags]`; see pipeline.run."""
import sys

from pipeline.run import main

if __name__ == "__main__":
    sys.exit(main())
