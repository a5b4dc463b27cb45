def main():
    print("printed text goes to stdout, never into the result")
    return {"ok": 1}
