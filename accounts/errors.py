class ServiceError(Exception):
    """A business rule refused the action. The message is shown to the user as it is."""

    def __init__(self, message: str, *, code: str = "invalid") -> None:
        super().__init__(message)
        self.message = message
        self.code = code
