from onnxmorph.cli import main

main()
