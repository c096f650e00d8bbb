"""`python -m tracer.train MODEL [...]`: the same as `tracer train`."""

from tracer.cli import cli

if __name__ == "__main__":
    import sys

    cli(["train", *sys.argv[1:]], prog_name="python -m tracer.train")
