import sys

print("execbox smoke ok")
print("%d.%d.%d" % sys.version_info[:3])
