<?php
echo "part1 @RELEASE@\n";
