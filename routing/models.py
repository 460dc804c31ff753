# Routes and their targets arrive with the routing issue; in the foundation a
# public model name routes to its deployments in priority order.
