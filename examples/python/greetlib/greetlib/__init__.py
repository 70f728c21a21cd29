"""A tiny local library, installed into the service's virtual environment."""


def greet(name):
    return f"Hello, {name}!"
