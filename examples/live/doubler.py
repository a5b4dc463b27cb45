# An interactive program for examples/live/client.py: doubles each number typed.
while True:
    try:
        line = input("> ")
    except EOFError:
        print("bye")
        break
    print(int(line) * 2)
