module example.com/benchdeploy

go 1.14
