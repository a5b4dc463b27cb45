print "execbox smoke ok\n";
printf "%vd\n", $^V;
