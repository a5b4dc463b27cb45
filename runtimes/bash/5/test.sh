echo "execbox smoke ok"
echo "$BASH_VERSION"
