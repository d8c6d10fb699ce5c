"""Web server drivers: Apache today (balancer-manager and the site); how a replica is taken
out of rotation and put back."""
