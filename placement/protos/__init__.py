"""Generated code of the runtime SPI (see generate.sh)."""
