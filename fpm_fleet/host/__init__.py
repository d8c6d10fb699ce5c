"""The host model: where a pool lives on a host, the handles every operation takes (a pool
on a host, a replica), its PHP-FPM replicas' commands paired with their readers, locks."""
