"""`python -m vmtr.eval` and `accelerate launch -m vmtr.eval`: the `vmtr eval` command alone."""

from vmtr.cli_eval import main

if __name__ == "__main__":
    main()
