import numpy as np
import pandas as pd


def main():
    df = pd.DataFrame({"region": ["north", "south", "north", "east"], "sales": [120, 80, 95, 60]})
    totals = df.groupby("region")["sales"].sum().sort_index()
    print(totals.to_string())
    return {"total": int(df["sales"].sum()), "by_region": totals.to_dict(), "mean": np.mean(df["sales"])}
