module github.com/clustral/clustral/integration

go 1.26.0

replace github.com/clustral/clustral => ../
