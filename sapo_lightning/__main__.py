from sapo_lightning.commands import main

main()
