"""`python -m keras_sngd.bench`: see `keras_sngd.bench`."""

from keras_sngd.bench.cli import main

main()
