from jaxrlhf.cli import run

run()
