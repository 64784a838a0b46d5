from seqtune.cli import main

main()
