"""The regional side of Meridian: the worker that runs in each region and the reference
workflows it hosts. It shares only ``router.codec`` with the router (same keys, same
wire format), so a region can be deployed without the routing control plane."""
