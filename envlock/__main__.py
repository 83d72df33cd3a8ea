from envlock.entry import console

console()
