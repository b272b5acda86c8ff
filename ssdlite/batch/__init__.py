"""Detection over image corpora: inputs, output formats, sliced inference, resume, Ray Data."""
