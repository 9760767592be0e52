"""``python -m llmcomp_hf.cli``: the same as the ``llmcomp`` console script."""

import sys

from llmcomp_hf.cli import main

sys.exit(main())
