from envlock.cli import console

console()
