import sys

from model.train.trainer import main

sys.exit(main())
