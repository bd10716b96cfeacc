"""gRPC servicers, error mapping and the server process."""
