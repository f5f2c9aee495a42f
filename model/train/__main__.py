from model.train.trainer import main

main()
