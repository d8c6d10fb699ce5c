<?php
echo "part2 @RELEASE@\n";
