<?php
echo "execbox smoke ok\n";
echo PHP_VERSION, "\n";
