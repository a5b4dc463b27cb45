print("execbox smoke ok " .. _VERSION:sub(5))
