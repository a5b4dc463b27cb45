import sys

print("execbox smoke ok")
print("%d.%d.%d" % sys.pypy_version_info[:3])
