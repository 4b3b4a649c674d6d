from sapo_lightning.cli import main

main()
