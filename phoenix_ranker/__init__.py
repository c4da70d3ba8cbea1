"""The product: `phoenix-ranker`, its command line (`cli`) over the packages beside it."""
