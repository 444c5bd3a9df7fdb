VERSION = "v1"


def Cold(request):
    return "hello %s\n" % VERSION
