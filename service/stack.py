from service.dev.stack import *  # noqa
