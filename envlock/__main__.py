from envlock.entry import main

main()
